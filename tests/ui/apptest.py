"""Helpers for driving the real app headless: deterministic replay, fixed sizes, screen text."""

from __future__ import annotations

import os
import time
from pathlib import Path

from textual.geometry import Region

from tcptop.frontends.screen.app import TcptopApp
from tcptop.replay import ReplaySource

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLE = DATA / "sample.jsonl"
SAMPLE_LATENCY = DATA / "sample_latency.jsonl"
SAMPLE_FAILURES = DATA / "sample_failures.jsonl"
SIZE = (150, 42)

# Clock-free rendering still formats numbers; keep the locale and zone fixed anyway.
os.environ["TZ"] = "UTC"
time.tzset()


def replay_app(path: Path = SAMPLE, **kw) -> TcptopApp:
    """A paused replay: nothing moves unless the test steps it."""
    kw.setdefault("start_paused", True)
    return TcptopApp(ReplaySource(path), **kw)


async def wait_for(pilot, cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.01)


async def play_to(pilot, app: TcptopApp, seq: int) -> None:
    """Step a paused replay until snapshot `seq` is on screen."""
    await wait_for(pilot, lambda: app.store.snapshot is not None)
    while app.store.snapshot.seq < seq:
        before = app.store.snapshot.seq
        await pilot.press("n")
        await wait_for(pilot, lambda: app.store.snapshot.seq > before)
    await pilot.pause()


def widget_text(widget) -> str:
    """What a widget shows, as plain text lines."""
    w, h = widget.region.size
    strips = widget.render_lines(Region(0, 0, w, h))
    return "\n".join(s.text.rstrip() for s in strips)


def table_lines(app: TcptopApp) -> list[str]:
    return [line for line in widget_text(app.table).splitlines() if line.strip()]
