"""The views of why connections fail — listeners (l), failed connects by destination (f), groups
(g) — and the flow list's drop and reset columns, driven by Pilot over a fixed replay."""

from __future__ import annotations

from apptest import SAMPLE_FAILURES, SIZE, play_to, replay_app, widget_text

from tcptop.frontends.screen.groups import GroupRow, MemberRow
from tcptop.widgets.detail import DetailPane
from tcptop.widgets.header import HeaderBar


def lines(app) -> list[str]:
    return [line for line in widget_text(app.rows_table).splitlines() if line.strip()]


def shown_ids(app) -> list:
    return [app.views.row_at(i).id for i in range(len(app.views))]


async def test_listener_view_lists_listeners_by_drops_per_second_and_filters_them():
    app = replay_app(SAMPLE_FAILURES)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("l")
        assert app.rows_table.display and not app.table.display and app.focused is app.rows_table
        rows = lines(app)
        assert rows[0].split()[:4] == ["PID", "COMM", "LISTEN", "ACCEPT-Q"] and "DROPS/s▼" in rows[0]
        # the api server's queue is full (129 of 128) and it drops 80 handshakes a second
        assert rows[1].split()[:6] == ["7000", "api-server", "0.0.0.0:8080", "129/128", "16", "80/s"]
        assert len(rows) == 1 + 5
        header = widget_text(app.query_one(HeaderBar))
        assert "5 listeners" in header and "sort DROPS/s▼" in header
        detail = widget_text(app.query_one(DetailPane))
        assert "full: new handshakes are dropped" in detail and "TCP_LISTEN_OVERFLOW 51" in detail
        await pilot.press("slash", *"port 22 or comm redis*", "enter")
        assert sorted(r.listener.comm for r in map(app.views.row_at, range(len(app.views)))) == ["redis-server", "sshd"]
        await pilot.press("escape", "l")
        assert app.table.display and not app.rows_table.display and app.focused is app.table


async def test_failures_view_sums_failed_connects_per_destination_with_their_errno():
    app = replay_app(SAMPLE_FAILURES)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("f")
        # by failures per second, then by count (ties: by address)
        assert shown_ids(app) == [("10.0.0.31", 9000), ("203.0.113.9", 443), ("10.0.0.70", 8081), ("10.0.0.40", 80)]
        top = app.views.row_at(0)
        assert top.count == 43 and top.reasons == {"ECONNREFUSED": 43} and top.per_s == 10.0
        assert "python3(5000), curl(4242)" in lines(app)[1]
        await pilot.press("slash", *"comm curl", "enter")
        assert [(r.id, r.count) for r in map(app.views.row_at, range(len(app.views)))] == [
            (("10.0.0.31", 9000), 3), (("203.0.113.9", 443), 2)]
        await pilot.press("f")
        assert app.views.table == "flows" and app.store.ids() == [103]


async def test_group_by_cycles_through_process_remote_service_local_port_and_back():
    app = replay_app(SAMPLE_FAILURES)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        seen = []
        for _ in range(4):
            await pilot.press("g")
            seen.append(app.views.state.group)
        assert seen == ["process", "remote", "lport", ""]
        assert app.table.display and app.views.table == "flows"


async def test_group_sums_are_the_sums_of_their_flows():
    app = replay_app(SAMPLE_FAILURES)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("g")
        groups = {r.id: r for r in map(app.views.row_at, range(len(app.views)))}
        nginx = groups[("process", (812, ""))]
        members = [app.store.get(fid) for fid in nginx.members]
        assert sorted(r.id for r in members) == [101, 102, 111]
        assert nginx.conns == 3 and nginx.tx_bps == sum(r.tx_bps for r in members)
        assert nginx.rx_bps == sum(r.rx_bps for r in members)
        assert nginx.fails == 2  # EHOSTUNREACH to 10.0.0.70:8081
        curl = groups[("process", (4242, ""))]
        assert (curl.retrans, curl.rto, curl.drops) == (48, 2, 8 + 2) and curl.fails == 2 + 3
        assert curl.retrans_ps == app.store.get(103).retrans_ps == 9.0
        # every flow is in exactly one group, and a group with failures only still has a row
        assert sum(g.flows for g in groups.values()) == len(app.store)
        assert groups[("process", (6200, ""))].conns == 0  # the closed transfer


async def test_filter_and_sort_work_on_groups():
    app = replay_app(SAMPLE_FAILURES)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("g", "slash", *"port 443", "enter")
        groups = {r.id[1]: r for r in map(app.views.row_at, range(len(app.views)))}
        assert groups[(812, "")].conns == 3 and groups[(4242, "")].conns == 1
        assert groups[(4242, "")].fails == 2  # only the failures to port 443
        assert set(groups) == {(812, ""), (4242, "")}
        await pilot.press("R")
        assert app.views.sort_column == "retrans" and shown_ids(app)[0] == ("process", (4242, ""))
        await pilot.press("r")
        assert shown_ids(app)[-1] == ("process", (4242, ""))
        header = lines(app)[0]
        await pilot.click("#views", offset=(header.index("CONNS"), 0))
        assert app.views.sort_column == "conns" and shown_ids(app)[0] == ("process", (812, ""))


async def test_a_group_opens_to_its_flows_and_closes_again():
    app = replay_app(SAMPLE_FAILURES)
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("g")
        assert app.rows_table.cursor_id == ("process", (812, ""))
        await pilot.press("e")
        rows = [app.views.row_at(i) for i in range(len(app.views))]
        assert isinstance(rows[0], GroupRow) and [r.row.id for r in rows[1:4]] == [101, 111, 102]
        assert all(isinstance(r, MemberRow) for r in rows[1:4]) and isinstance(rows[4], GroupRow)
        await pilot.press("down")
        detail = widget_text(app.query_one(DetailPane))
        assert "nginx pid 812" in detail and "192.168.1.50:51234" in detail  # a member shows as a flow
        await play_to(pilot, app, 6)  # open groups stay open across refreshes, the selection follows
        rows = [app.views.row_at(i) for i in range(len(app.views))]
        assert [r.row.id for r in rows[1:4]] == [101, 111, 102] and app.rows_table.cursor_id == ("flow", 101)
        await pilot.press("left")
        assert app.rows_table.cursor_id == ("process", (812, "")) and len(app.views) == len(rows) - 3


async def test_flow_detail_and_columns_say_why_packets_were_dropped():
    app = replay_app(SAMPLE_FAILURES, sort="pid")
    async with app.run_test(size=(220, 42)) as pilot:
        await play_to(pilot, app, 5)
        await pilot.press("D")
        assert app.store.sort_column == "drops" and app.store.ids()[0] == 103
        table = [line for line in widget_text(app.table).splitlines() if line.strip()]
        assert "DROPS▼" in table[0] and "DROP REASON" in table[0] and "RST" in table[0]
        assert "QDISC_DROP" in table[1]
        detail = widget_text(app.query_one(DetailPane))
        assert "Drops QDISC_DROP 8, TCP_OFO_DROP 2" in detail
        app.table.select_flow(109)
        await pilot.pause()
        detail = widget_text(app.query_one(DetailPane))
        assert "Resets sent 0 received 1 (last: received ECONNRESET)" in detail


async def test_help_lists_the_new_keys():
    app = replay_app(SAMPLE_FAILURES)
    async with app.run_test(size=(150, 90)) as pilot:
        await play_to(pilot, app, 1)
        await pilot.press("question_mark")
        text = widget_text(app.screen.query_one("#help-text"))
        for words in ("listeners: every listening socket", "failed connects by destination",
                      "group the flows: none → process → remote service → local port",
                      "open / close the selected group", "sort by packets the kernel dropped"):
            assert words in text, words
