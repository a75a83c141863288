"""Every key path of the screen, driven by Pilot over a fixed replay (no engine, no root)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from apptest import SAMPLE, SAMPLE_LATENCY, SIZE, play_to, replay_app, table_lines, wait_for, widget_text
from factories import make_flow, make_snapshot

from tcptop.frontends.screen.app import TcptopApp
from tcptop.model import RunInfo
from tcptop.widgets.detail import DetailPane
from tcptop.widgets.filter_bar import FilterBar
from tcptop.widgets.header import HeaderBar
from tcptop.widgets.help import HelpScreen
from tcptop.widgets.sort_picker import SortPicker
from tcptop.widgets.waterfall import WaterfallPane

# At snapshot 5 of sample.jsonl, by TX/s: nginx bulk (12 MiB/s), python3 (1 MiB/s), curl (lossy)...
BY_TX_AT_5 = [101, 108, 103, 111, 105, 102, 104, 107, 110, 109, 106]


async def test_shows_every_flow_sorted_by_send_rate():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        assert app.store.ids() == BY_TX_AT_5
        lines = table_lines(app)
        assert lines[0].split()[:5] == ["PID", "COMM", "LOCAL", "REMOTE", "STATE"]
        assert "TX/s▼" in lines[0]
        assert lines[1].split()[:2] == ["812", "nginx"] and "12.0 MiB/s" in lines[1]
        assert len(lines) == 1 + 11
        header = widget_text(app.query_one(HeaderBar))
        assert "demo-host" in header and "6.18.44-fc" in header and "engine core" in header
        assert "11/11 flows" in header
        assert "PAUSED" in header


async def test_filter_by_port_selects_exactly_those_flows():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("slash")
        assert app.query_one(FilterBar).has_class("-open")
        await pilot.press(*"port 443")
        assert app.store.ids() == [101, 103, 111, 102]
        await pilot.press("enter")
        assert not app.query_one(FilterBar).has_class("-open")
        assert app.focused is app.table
        header = widget_text(app.query_one(HeaderBar))
        assert "4/11 flows" in header and "filter: port 443" in header


async def test_filter_by_pid_and_comm():
    app = replay_app(filter_expr="pid 812")
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        assert app.store.ids() == [101, 111, 102]
        await pilot.press("slash", *" and not comm nginx", "enter")
        assert app.store.ids() == []
        assert "no flows match the filter" in widget_text(app.table)


async def test_invalid_filter_shows_the_error_and_keeps_the_last_good_one():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("slash", *"port 443 and")
        bar = app.query_one(FilterBar)
        assert app.store.filter_expr == "port 443"
        assert app.store.ids() == [101, 103, 111, 102]
        err = widget_text(bar.query_one("#filter-error"))
        assert "filter ends early" in err and "(column 13)" in err
        assert err.index("^") == len("/ ") + 12  # the caret sits under the column
        await pilot.press(*" pid 4242")
        assert app.store.ids() == [103]
        assert widget_text(bar.query_one("#filter-error")).strip() == ""


async def test_escape_clears_the_filter_from_the_bar_and_from_the_table():
    app = replay_app(filter_expr="comm curl")
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        assert app.store.ids() == [103]
        await pilot.press("escape")
        assert app.store.filter_expr == "" and len(app.store) == 11
        await pilot.press("slash", *"rport 873")
        assert app.store.ids() == [106]
        await pilot.press("escape")
        assert len(app.store) == 11
        assert not app.query_one(FilterBar).has_class("-open")
        assert app.focused is app.table


async def test_typing_q_or_space_in_the_filter_does_not_quit_or_pause():
    app = replay_app(start_paused=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.store.snapshot is not None)
        await pilot.press("slash", *"comm q p")
        assert app.is_running and not app.paused
        assert app.query_one(FilterBar).input.value == "comm q p"


async def test_sort_picker_sorts_by_the_chosen_column():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("s")
        assert isinstance(app.screen, SortPicker)
        # columns: pid comm local remote state tx rx retrans fast rto cwnd rtt ...; tx is highlighted
        for _ in range(6):
            await pilot.press("down")
        await pilot.press("enter")
        assert not isinstance(app.screen, SortPicker)
        assert app.store.sort_column == "rtt"
        assert app.store.ids()[:3] == [103, 108, 107]  # 45 ms, 19 ms, 2.1 ms
        await pilot.press("s", "escape")
        assert app.store.sort_column == "rtt"


async def test_r_reverses_and_capital_r_puts_the_lossy_flow_on_top():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("r")
        assert app.store.ids() == list(reversed(BY_TX_AT_5))
        await pilot.press("R")
        assert app.store.sort_column == "retrans" and app.store.descending
        assert app.store.ids()[0] == 103
        assert table_lines(app)[1].split()[:2] == ["4242", "curl"]
        await pilot.press("less_than_sign")
        assert app.store.sort_column == "rx"
        await pilot.press("greater_than_sign", "greater_than_sign")
        assert app.store.sort_column == "fast"


async def test_selection_follows_the_connection_across_resorts_and_refreshes():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("down", "down", "up")
        assert app.table.cursor_id == 108
        await pilot.press("R")
        assert app.table.cursor_id == 108
        assert app.store.row_at(app.table._cursor_index).id == 108
        await pilot.press("r")
        assert app.table.cursor_id == 108
        await play_to(pilot, app, 7)
        assert app.table.cursor_id == 108
        assert "python3" in widget_text(app.query_one(DetailPane))




async def test_home_end_and_pages_move_by_rows():
    app = replay_app(sort="pid")
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        ids = app.store.ids()
        await pilot.press("end")
        assert app.table.cursor_id == ids[-1]
        await pilot.press("home")
        assert app.table.cursor_id == ids[0]
        await pilot.press("pagedown")
        assert app.table.cursor_id == ids[-1]  # 11 rows fit on one page
        await pilot.press("up", "k")
        assert app.table.cursor_id == ids[-3]


async def test_pause_holds_the_display_while_collection_goes_on():
    src = CountingSource()
    app = TcptopApp(src)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.store.snapshot is not None and app.store.snapshot.seq >= 2)
        await pilot.press("p")
        assert app.paused
        frozen = app.store.snapshot.seq
        polled = src.polls
        await wait_for(pilot, lambda: src.polls >= polled + 3)
        assert app.store.snapshot.seq == frozen
        assert "PAUSED" in widget_text(app.query_one(HeaderBar))
        await pilot.press("space")
        assert not app.paused
        assert app.store.snapshot.seq >= frozen + 3  # unpausing jumps to now
        assert "PAUSED" not in widget_text(app.query_one(HeaderBar))


async def test_replay_steps_back_and_forth_while_paused():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 3)
        await pilot.press("b")
        await wait_for(pilot, lambda: app.store.snapshot.seq == 2)
        await pilot.press("plus")
        await wait_for(pilot, lambda: app.replay_status and app.replay_status.speed == 2.0)
        assert "×2" in widget_text(app.query_one(HeaderBar))


async def test_unpaused_replay_plays_to_the_end():
    app = TcptopApp(_fast_replay())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.store.snapshot is not None and app.store.snapshot.seq == 8)
        await wait_for(pilot, lambda: app.replay_status.ended)
        assert " end " in widget_text(app.query_one(HeaderBar)) + " "


async def test_help_lists_keys_and_the_seed_glossary():
    app = replay_app()
    async with app.run_test(size=(150, 80)) as pilot:
        await play_to(pilot, app, 1)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = widget_text(app.screen.query_one("#help-text"))
        for words in ("FlightSize", "CurAppWQueue", "SampleRTT", "In flight", "Peer window",
                      "sort by retransmissions", "lport N / rport N", "pause the display"):
            assert words in text, words
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("question_mark", "question_mark")
        assert not isinstance(app.screen, HelpScreen)


async def test_q_quits_cleanly():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 1)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    assert not app.is_running


async def test_clicking_a_header_sorts_and_clicking_again_reverses():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        header = table_lines(app)[0]
        x = header.index("RTT")
        await pilot.click("#flows", offset=(x, 0))
        assert app.store.sort_column == "rtt" and app.store.descending
        assert app.store.ids()[0] == 103
        await pilot.click("#flows", offset=(x, 0))
        assert not app.store.descending
        assert app.store.ids()[-1] == 103


async def test_clicking_a_row_selects_it():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.click("#flows", offset=(10, 2))  # line 0 is the header
        assert app.table.cursor_id == BY_TX_AT_5[1]
        assert "python3" in widget_text(app.query_one(DetailPane))


async def test_enter_and_tab_move_focus_between_panes():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 2)
        assert app.focused is app.table
        await pilot.press("enter")
        assert app.focused is app.query_one(DetailPane)
        await pilot.press("enter")
        assert app.focused is app.query_one(WaterfallPane)
        await pilot.press("tab")
        assert app.focused is app.table


async def test_detail_pane_shows_all_sixteen_metrics_with_rates():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("R")  # curl, the lossy flow, selected on top
        app.table.select_index(0)
        await pilot.pause()
        text = widget_text(app.query_one(DetailPane))
        for label in ("Sent", "Received", "App wrote", "App read", "Retransmitted", "Fast recoveries",
                      "RTO timeouts", "Congestion window", "In flight", "Peer window", "MSS", "Send queue",
                      "Send queue peak", "RTT samples", "RTT sum", "Age"):
            assert label in text, label
        assert "curl pid 4242" in text
        assert "48" in text and "9.0/s" in text  # 12 + 9*4 retransmissions, 9 per second
        assert "45.0 ms" in text
        assert "TX/s" in text and "cwnd" in text  # sparklines after a few snapshots


async def test_closed_flow_is_dimmed_and_zero_window_is_flagged():
    app = replay_app(sort="pid")
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        idx = app.store.index_of(109)
        strip = app.table.render_line(idx + 1)
        assert "CLOSED" in strip.text
        assert all(seg.style.dim for seg in strip if seg.text.strip())
        idx = app.store.index_of(106)
        strip = app.table.render_line(idx + 1)
        zero = [seg for seg in strip if seg.text.strip() == "0 B"]
        assert zero and zero[0].style.bgcolor is not None and zero[0].style.bgcolor.name == "red"


async def test_waterfall_says_there_is_no_data_rather_than_inventing_it():
    app = replay_app(SAMPLE)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 2)
        text = widget_text(app.query_one(WaterfallPane))
        assert "No packet-level latency" in text
        assert "µs" not in text


async def test_waterfall_draws_each_layer_for_the_flow_and_all_flows():
    app = replay_app(SAMPLE_LATENCY)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        app.table.select_flow(103)
        await pilot.pause()
        text = widget_text(app.query_one(WaterfallPane))
        assert "bars: curl" in text and "right: all flows" in text
        lines = text.splitlines()
        qdisc = next(line for line in lines if "qdisc " in line and "→" not in line)
        assert "12 µs" in qdisc and "4.00 ms" in qdisc and "900 µs" in qdisc
        app.table.select_flow(106)
        await pilot.pause()
        text = widget_text(app.query_one(WaterfallPane))
        assert "IP+TCP" in text  # a merged stage keeps its place in the path
        app.table.select_flow(101)
        await pilot.pause()
        assert "none for the selected flow" in widget_text(app.query_one(WaterfallPane))


async def test_corrupt_replay_lines_are_reported_in_the_header(tmp_path):
    lines = SAMPLE.read_text().splitlines()
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join([lines[0], "{oops", lines[1], lines[2]]) + "\n")
    app = replay_app(path)
    async with app.run_test(size=(220, 42)) as pilot:
        await play_to(pilot, app, 3)
        header = widget_text(app.query_one(HeaderBar))
        assert f"1 unreadable replay line skipped (last {path}:2: not JSON" in header.replace("\n", "")
        assert app.store.snapshot.seq == 3


async def test_run_warnings_are_always_in_the_header():
    run = RunInfo(engine="core", flows_evicted=3, events_lost=7,
                  events_lost_by={"closed_records": 5, "notices": 0, "failure_sockets": 2},
                  hooks={"tp/tcp_probe": "ok", "sockops": "cgroup2 not mounted"},
                  degraded=("read_bytes: since start only",))
    src = CountingSource(run=run)
    app = TcptopApp(src)
    async with app.run_test(size=(220, 30)) as pilot:
        await wait_for(pilot, lambda: app.store.snapshot is not None)
        await pilot.pause()
        header = widget_text(app.query_one(HeaderBar)).replace("\n", "")
        assert "sockops: cgroup2 not mounted" in header
        assert "3 flows evicted" in header
        assert "7 events lost (closed records 5, failure sockets 2)" in header
        assert "read_bytes: since start only" in header
        assert "tp/tcp_probe" not in header


class CountingSource:
    """A live-like source: every poll is a new snapshot, quickly, from another thread."""

    def __init__(self, run: RunInfo | None = None) -> None:
        self.interval_s = 0.02
        self.polls = 0
        self.run = run or RunInfo(engine="fake")
        self.lock = threading.Lock()

    def poll(self):
        with self.lock:
            self.polls += 1
            n = self.polls
        flows = [make_flow(1, bytes_sent=1000 * n), make_flow(2, bytes_sent=10 * n)]
        return make_snapshot(flows, ts=float(n), seq=n, run=self.run)

    def close(self) -> None:
        pass


def _fast_replay():
    from tcptop.replay import ReplaySource
    return ReplaySource(SAMPLE, speed=16.0)


@pytest.fixture(autouse=True)
def _no_stray_threads():
    before = {t.ident for t in threading.enumerate()}
    yield
    # the poller thread ends with the app (it must not keep the process alive)
    import time
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in before and not t.daemon]
        if not extra:
            break
        time.sleep(0.02)
    assert not [t for t in threading.enumerate() if t.ident not in before and not t.daemon]


_ = dataclasses
