"""What a user or a file can throw at the running screen: nothing reaches the terminal raw, nothing kills it.

A process can name itself with escape sequences (prctl PR_SET_NAME takes any bytes), and a
replay file can hold any string: before, "\\x1b]2;...\\x07" in a comm retitled the terminal
window and "\\x1b[5m" in a host name made the header blink.
"""

from __future__ import annotations

import json
import re

from apptest import SAMPLE, SIZE, play_to, replay_app, wait_for, widget_text
from textual.widgets._toast import Toast

from tcptop.frontends.screen.app import SourceFailed
from tcptop.widgets.detail import DetailPane
from tcptop.widgets.filter_bar import FilterBar
from tcptop.widgets.header import HeaderBar
from tcptop.widgets.waterfall import WaterfallPane

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
EVIL = "\x1b]2;PWNED\x07\x1b[2J\x9b31m\x1b[5m"


def hostile_replay(tmp_path):
    out = []
    for line in SAMPLE.read_text().splitlines():
        d = json.loads(line)
        d["host"] = "h" + EVIL
        d["kernel"] = EVIL
        d["run"]["degraded"] = ["read_bytes: " + EVIL]
        d["run"]["hooks"] = {EVIL: "broken " + EVIL}
        for f in d["flows"]:
            f["comm"] = EVIL + f["comm"]
            f["cgroup"] = EVIL
            f["container"] = EVIL
            f["latency"] = {"rx": {EVIL: {"count": 5, "p50_us": 3, "p99_us": 9}}}
        out.append(json.dumps(d))
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


async def test_control_characters_from_data_never_reach_the_terminal(tmp_path):
    app = replay_app(hostile_replay(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 3)
        for widget in (app.table, app.query_one(HeaderBar), app.query_one(DetailPane),
                       app.query_one(WaterfallPane)):
            text = widget_text(widget)
            assert not CONTROL.search(text.replace("\n", "")), (type(widget).__name__, text[:300])
        assert "?]2;PWNED" in widget_text(app.table)  # shown, as ps(1) shows such names


async def test_a_source_error_with_markup_characters_is_shown_as_text():
    app = replay_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_for(pilot, lambda: app.store.snapshot is not None)
        app.post_message(SourceFailed("OSError: [Errno 5] [/] [link=x] " + EVIL))
        await wait_for(pilot, lambda: app.query(Toast))
        await pilot.pause(0.2)
        assert app.is_running
        toast = widget_text(app.query(Toast).first())
        assert "[Errno 5] [/] [link=x]" in toast and not CONTROL.search(toast.replace("\n", ""))


async def test_hostile_filters_typed_into_the_box_are_errors_not_crashes():
    """300 '(' typed, or a Unicode digit, killed the app (RecursionError, ValueError)."""
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await play_to(pilot, app, 2)
        bar = app.query_one(FilterBar)
        for text, words in (("(" * 300, "nested more than 50 deep"), ("port ²", "not a port number"),
                            ("comm " + "[" * 3000, None)):
            await pilot.press("slash")
            bar.input.value = text
            await pilot.pause()
            assert app.is_running
            if words:
                assert words in bar.error
            await pilot.press("escape")
        assert app.store.filter_expr == ""
